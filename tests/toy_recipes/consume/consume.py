"""A toy recipe for orchestration tests: sums the numbers of its input into total.json."""

import json

from recipes.nano3 import runtime
from tests.toy_recipes.journal import record_start


def main() -> None:
    ctx = runtime.start()
    record_start(ctx.work_dir, ctx.output_dir)
    numbers = [json.loads(line)["n"] for line in (ctx.input_path("data") / "numbers.jsonl").read_text().splitlines()]
    total = sum(numbers) * ctx.config.factor
    (ctx.output_dir / "total.json").write_text(json.dumps({"total": total}))
    runtime.finish(ctx, "eval_results", metrics={"total": total})


if __name__ == "__main__":
    main()
