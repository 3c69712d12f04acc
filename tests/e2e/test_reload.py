"""Hot reload during a live run: the policy file is replaced by a broken one (reported, the last
good configuration keeps scaling the Deployment), then by a fixed one (applied at the next poll)."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.harness import Queue, World, chat_policy, e2e_test
from tests.eventually import eventually


@e2e_test
async def test_a_broken_policy_file_keeps_the_last_good_config_scaling(
    world: World, chat_queue: Queue, tmp_path: Path
) -> None:
    directory = tmp_path / "policies"
    directory.mkdir()
    policy = directory / "chat.yaml"

    def write(target: str) -> None:
        policy.write_text(chat_policy(chat_queue.name, target))

    write("10")
    instance = await world.start("a", directory)
    reloader = instance.live.reloader
    assert reloader is not None
    await chat_queue.set_length(30)
    await eventually(lambda: world.replicas("chat-a100") == 3, 5, "scaled by the first config")

    write("ten")  # not a number
    await eventually(lambda: reloader.rejected == 1, 3, "broken file noticed")
    assert [str(e).split(": ")[1] for e in reloader.last_errors] == ["spec.triggers[0].targetPerReplica"]
    await chat_queue.set_length(50)
    await eventually(lambda: world.replicas("chat-a100") == 5, 5, "last good config still scaling")

    write("5")
    await eventually(lambda: reloader.applied == 1, 3, "fixed file applied")
    await eventually(lambda: world.replicas("chat-a100") == 10, 5, "scaled by the new config")
    assert reloader.last_errors == ()
