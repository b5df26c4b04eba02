# Tutorials 2-4: LLaMA Board's "Preview command" (LLaMA-Factory 9ae17cd17, May 2025) with the
# training stage set to DPO, the preference demo dataset dpo_en_demo, learning rate 5e-6 and the
# page's DPO defaults (pref_beta 0.1, pref_ftx 0, pref_loss sigmoid). Run from the
# LLaMA-Factory folder. Only the model path differs (Qwen/Qwen2.5-7B-Instruct -> a tiny model).
llamafactory-cli train \
    --stage dpo \
    --do_train True \
    --model_name_or_path models/tiny-qwen2.5 \
    --preprocessing_num_workers 16 \
    --finetuning_type lora \
    --template qwen \
    --flash_attn auto \
    --dataset_dir data \
    --dataset dpo_en_demo \
    --cutoff_len 2048 \
    --learning_rate 5e-06 \
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
    --output_dir saves/Qwen2.5-7B-Instruct/lora/train_2025-05-26-14-20-31 \
    --bf16 True \
    --plot_loss True \
    --trust_remote_code True \
    --ddp_timeout 180000000 \
    --include_num_input_tokens_seen True \
    --optim adamw_torch \
    --lora_rank 8 \
    --lora_alpha 16 \
    --lora_dropout 0 \
    --lora_target all \
    --pref_beta 0.1 \
    --pref_ftx 0 \
    --pref_loss sigmoid
