"""`python -m deployments.notifications`: tell someone when a candidate is rejected or a run fails.

    python -m deployments.notifications --webhook https://hooks.example.com/nano3   # makes the block
    python -m deployments.notifications --block my-slack                           # any notification block

It makes (or replaces) two Prefect automations that send through a notification block:
`nano3: model rejected` on the gate's `nano3.model.rejected` event (tasks/gate.py), and
`nano3: run failed` on a failed run of a nano3 flow. `--webhook` saves a custom-webhook block
`nano3-alerts` that POSTs the message as JSON; `--block` names a block made in the UI (Slack,
e-mail, Teams …). Run it again after changing either: the automations are replaced, not doubled.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from flows.commands.errors import user_errors

WEBHOOK_BLOCK = "nano3-alerts"
REJECTED_AUTOMATION = "nano3: model rejected"
FAILED_AUTOMATION = "nano3: run failed"
#: The flows whose failure is worth a message: the pipeline, its one-stage flows, the watcher.
FLOW_NAMES = "nano3*"

app = typer.Typer(add_completion=False, rich_markup_mode="rich", pretty_exceptions_enable=False)


def webhook_block(url: str):  # noqa: ANN201 - CustomWebhookNotificationBlock
    """A block that POSTs {"subject", "body"} as JSON to `url`."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    return CustomWebhookNotificationBlock(
        name=WEBHOOK_BLOCK, url=url, json_data={"subject": "{{subject}}", "body": "{{body}}"}, allow_private_urls=True
    )


def automations(block_document_id) -> list:  # noqa: ANN001 - UUID
    from prefect.automations import Automation
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    from tasks.gate import REJECTED_EVENT

    rejected = Automation(
        name=REJECTED_AUTOMATION,
        description="The evaluation gate kept the model in service: the candidate was worse.",
        trigger=EventTrigger(expect={REJECTED_EVENT}, match={"prefect.resource.id": "nano3.model.*"},
                             posture=Posture.Reactive, threshold=1),
        actions=[SendNotification(
            block_document_id=block_document_id,
            subject="nano3: candidate {{ event.payload.candidate }} rejected",
            body="{{ event.payload.reason }}",
        )],
    )
    failed = Automation(
        name=FAILED_AUTOMATION,
        description="A nano3 flow run failed.",
        trigger=EventTrigger(expect={"prefect.flow-run.Failed"}, match={"prefect.resource.id": "prefect.flow-run.*"},
                             match_related={"prefect.resource.role": "flow", "prefect.resource.name": FLOW_NAMES},
                             posture=Posture.Reactive, threshold=1),
        actions=[SendNotification(
            block_document_id=block_document_id,
            subject="nano3: flow run {{ flow_run.name }} failed",
            body="Flow run {{ flow_run.name }} of {{ flow.name }} ended {{ flow_run.state.name }}: {{ flow_run.state.message }}",
        )],
    )
    return [rejected, failed]


def install(webhook: str | None, block: str | None) -> list[str]:
    """Save the webhook block (or load the named one) and replace the two automations."""
    from prefect.automations import Automation
    from prefect.blocks.core import Block

    from blocks.errors import ConfigError
    from tasks.job_config import COMMAND_LINE

    if bool(webhook) == bool(block):
        raise ConfigError("give one of --webhook URL or --block NAME", file=COMMAND_LINE)
    if webhook:
        saved = webhook_block(webhook)
        saved.save(WEBHOOK_BLOCK, overwrite=True)
        document_id = saved._block_document_id
    else:
        slug = block if "/" in str(block) else None
        try:
            loaded = Block.load(slug) if slug else _load_notification_block(str(block))
        except ValueError as exc:
            raise ConfigError(str(exc), file=COMMAND_LINE, key="--block") from None
        document_id = loaded._block_document_id
    names = []
    for automation in automations(document_id):
        while True:  # every automation of that name, so a rerun replaces rather than doubles
            try:
                Automation.read(name=automation.name).delete()
            except ValueError:
                break
        automation.create()
        names.append(automation.name)
    return names


def _load_notification_block(name: str):  # noqa: ANN202 - Block
    """A notification block by name alone, whatever its type."""
    from prefect.client.orchestration import get_client
    from prefect.blocks.core import Block
    from prefect.client.schemas.filters import BlockDocumentFilter, BlockDocumentFilterName

    with get_client(sync_client=True) as client:
        documents = client.read_block_documents(block_document_filter=BlockDocumentFilter(name=BlockDocumentFilterName(any_=[name])))
    if not documents:
        raise ValueError(f"no block named {name}; make one in the UI (Blocks) or pass --webhook")
    document = documents[0]
    return Block.load(f"{document.block_type.slug}/{document.name}")


@app.command(help="Send a notification when the gate rejects a candidate or a nano3 run fails.")
@user_errors
def main(
    webhook: Annotated[str | None, typer.Option(help="URL to POST {subject, body} to (saved as block nano3-alerts).")] = None,
    block: Annotated[str | None, typer.Option(help="An existing notification block, by name or type/name.")] = None,
) -> None:
    for name in install(webhook, block):
        print(f"automation '{name}' created")


if __name__ == "__main__":
    sys.exit(app())
