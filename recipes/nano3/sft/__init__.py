"""The nano3 sft recipe (backend hf): `python recipes/nano3/sft/train.py --config resolved.yaml`."""
