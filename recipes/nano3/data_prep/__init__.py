"""Data preparation for nano3: the pretraining corpus and tokenizer, SFT chats and RL prompts.

The modules here are shared by the three `prep.py` scripts so that the rules two scripts must
agree on (which arithmetic problems are held out, how hub datasets fail offline) live in one place.
"""
