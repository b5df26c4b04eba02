# Tutorials 2-4, afterwards: chat with the LoRA SFT run in the browser, as LLaMA-Factory's README
# ("Fine-Tuning with LLaMA Board GUI" / inference section) and the tutorials write it, flags
# only, from the LLaMA-Factory folder. Only the model path differs
# (Qwen/Qwen2.5-7B-Instruct -> a tiny test model).
llamafactory-cli webchat \
    --model_name_or_path models/tiny-qwen2.5 \
    --adapter_name_or_path saves/Qwen2.5-7B-Instruct/lora/train_2025-05-26-10-12-09 \
    --template qwen \
    --finetuning_type lora
