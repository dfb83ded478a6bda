"""What a user does with the exported folder, outside this project: plain transformers.

    python -I generate.py MODEL_DIR CHATS.jsonl      # prints {"right", "of", "project_code"}

Run with `-I` from another folder, so nothing of the project can be imported by accident;
`project_code` lists any module of it that got imported anyway (it must stay empty).
"""

import json
import sys

from transformers import AutoModelForCausalLM, AutoTokenizer

folder, data = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder)
with open(data) as handle:
    problems = [json.loads(line)["messages"] for line in handle][:20]
right = 0
for messages in problems:
    prompt = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=6, do_sample=False)
    reply = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    right += reply == messages[1]["content"]
ours = sorted(name for name in sys.modules if name.split(".")[0] in ("recipes", "tasks", "flows", "blocks", "tests"))
print(json.dumps({"right": right, "of": len(problems), "project_code": ours}))
