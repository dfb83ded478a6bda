"""The nano3 pretrain recipe (backend hf): `python recipes/nano3/pretrain/train.py --config resolved.yaml`."""
