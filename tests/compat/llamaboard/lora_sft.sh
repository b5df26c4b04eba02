# Tutorials 2-4: LLaMA Board (`llamafactory-cli webui`), Train tab, "Preview command", as it
# prints it (src/llamafactory/webui/runner.py _parse_train_args and common.py gen_cmd at
# LLaMA-Factory 9ae17cd17, May 2025, which prints the multimodal keys for every model):
# Qwen2.5-7B-Instruct, LoRA SFT on identity + alpaca_zh_demo, the page's defaults, "enable
# thinking" unticked. Copied into a terminal and run from the LLaMA-Factory folder.
# Only the model path differs (Qwen/Qwen2.5-7B-Instruct -> a tiny test model).
llamafactory-cli train \
    --stage sft \
    --do_train True \
    --model_name_or_path models/tiny-qwen2.5 \
    --preprocessing_num_workers 16 \
    --finetuning_type lora \
    --template qwen \
    --flash_attn auto \
    --dataset_dir data \
    --dataset identity,alpaca_zh_demo \
    --cutoff_len 2048 \
    --learning_rate 5e-05 \
    --num_train_epochs 3.0 \
    --max_samples 100000 \
    --per_device_train_batch_size 2 \
    --gradient_accumulation_steps 8 \
    --lr_scheduler_type cosine \
    --max_grad_norm 1.0 \
    --logging_steps 5 \
    --save_steps 100 \
    --warmup_steps 0 \
    --packing False \
    --report_to none \
    --freeze_vision_tower True \
    --freeze_multi_modal_projector True \
    --image_max_pixels 589824 \
    --image_min_pixels 1024 \
    --video_max_pixels 65536 \
    --video_min_pixels 256 \
    --output_dir saves/Qwen2.5-7B-Instruct/lora/train_2025-05-26-10-12-09 \
    --bf16 True \
    --plot_loss True \
    --trust_remote_code True \
    --ddp_timeout 180000000 \
    --include_num_input_tokens_seen True \
    --optim adamw_torch \
    --lora_rank 8 \
    --lora_alpha 16 \
    --lora_dropout 0 \
    --lora_target all
