"""`adfactory train-lora`: brand-style LoRAs (`lora.py`) and LCM-LoRA distillation (`lcm_distill.py`) from a folder of
images and captions (`data.py`), against the config's base model; shared plumbing in `common.py`, the entry point in
`train.py`. Nothing in a night imports it."""
