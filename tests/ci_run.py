"""The pipeline at the size CI runs it: the e2e test runs it, bench/ladder.py measures its ladder
over seeds (the test's margins come from there) and bench/orchestration.py its overhead."""

CI_RUN = [
    # The source (store/sources/pretrain-corpus) starts with 1 MB of the offline corpus.
    "data_prep/pretrain:corpus.fill_bytes=1000000",
    "data_prep/pretrain:tokenizer.vocab_size=2048",
    "pretrain:train.train_iters=60",
    "pretrain:train.save_interval=30",
    "pretrain:train.eval_interval=30",
    # SFT keeps its tiny length (400 steps): the held-out jump comes between steps 200 and 300,
    # and a run cut at 250 landed on either side of it (0.69, then 0.08); at 400, 0.99.
    "sft:train.save_interval=200",
    "sft:train.eval_interval=200",
    # RL's mean reward passes 0.9 by step 40 of the laptop run.
    "rl:train.train_iters=50",
    "rl:train.save_interval=25",
    "eval:limit=100",
]
