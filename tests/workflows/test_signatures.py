"""Signatures and workflows as data: Celery's dict forms, building, and the messages sent.

No worker here: what a workflow sends is read back from the broker, raw.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from workflow_support import receive_all

from celeriac import Celery, GroupResult, Signature, chain, chord, group, signature
from celeriac.canvas import chunks, maybe_signature, xmap, xstarmap
from celeriac.transports.memory import MemoryTransport


@pytest.fixture
def tasks(app: Celery) -> Any:
    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="t.tsum")
    def tsum(values: list[int]) -> int:
        return sum(values)

    return type("Tasks", (), {"add": add, "tsum": tsum})


def plain(value: Any) -> Any:
    """``value`` as it is after a trip through JSON (what a worker receives)."""
    return json.loads(json.dumps(value))


def test_a_signature_is_a_dict_in_celerys_form(tasks: Any) -> None:
    assert plain(tasks.add.s(2, y=3).set(queue="q")) == {
        "task": "t.add",
        "args": [2],
        "kwargs": {"y": 3},
        "options": {"queue": "q"},
        "subtask_type": None,
        "immutable": False,
    }
    assert tasks.add.si(1, 2)["immutable"] is True


def test_workflows_keep_their_members_where_celery_does(tasks: Any) -> None:
    members = [tasks.add.s(1, 1), tasks.add.s(2, 2)]
    as_group = plain(group(members))
    assert (as_group["task"], as_group["subtask_type"]) == ("celery.group", "group")
    assert [m["args"] for m in as_group["kwargs"]["tasks"]] == [[1, 1], [2, 2]]
    as_chain = plain(chain(*members))
    assert (as_chain["task"], as_chain["subtask_type"]) == ("celery.chain", "chain")
    assert len(as_chain["kwargs"]["tasks"]) == 2
    as_chord = plain(chord(members, tasks.tsum.s()))
    assert (as_chord["task"], as_chord["subtask_type"]) == ("celery.chord", "chord")
    assert as_chord["kwargs"]["body"]["task"] == "t.tsum"
    header = as_chord["kwargs"]["header"]
    assert [m["args"] for m in header["kwargs"]["tasks"]] == [[1, 1], [2, 2]]


def test_a_dict_from_a_message_becomes_the_right_workflow_class(tasks: Any, app: Celery) -> None:
    nested = chord([chain(tasks.add.s(1, 1), tasks.add.s(2)), tasks.add.s(3, 3)], tasks.tsum.s())
    rebuilt = maybe_signature(plain(nested), app=app)
    assert isinstance(rebuilt, chord)
    assert isinstance(rebuilt.tasks, group)
    first, second = rebuilt.tasks.tasks
    assert isinstance(first, chain) and type(second) is Signature
    assert isinstance(first.tasks[1], Signature) and first.tasks[1].args == [2]
    # Celery's chord keeps a plain list as its header until frozen: read that form too.
    celery_form = {**plain(nested), "kwargs": {"kwargs": {}, "header": plain([tasks.add.s(1, 1)])}}
    celery_form["kwargs"]["body"] = plain(tasks.tsum.s())
    assert isinstance(maybe_signature(celery_form, app=app).tasks, group)


def test_clone_prepends_arguments_and_merges_options_unless_immutable(tasks: Any) -> None:
    partial = tasks.add.s(2).set(queue="a")
    clone = partial.clone((1,), {"z": 0}, queue="b", countdown=1)
    assert (clone.args, clone.kwargs) == ([1, 2], {"z": 0})
    assert clone.options == {"queue": "b", "countdown": 1}
    assert (partial.args, partial.options) == ([2], {"queue": "a"})
    frozen_args = tasks.add.si(1, 2).clone((99,), {"z": 0})
    assert (frozen_args.args, frozen_args.kwargs) == ([1, 2], {})


def test_clone_keeps_the_place_a_task_was_given_in_a_group(tasks: Any) -> None:
    member = tasks.add.s(1, 1)
    member.freeze(group_id="g1", group_index=3)
    clone = member.clone(group_id="other", group_index=4, queue="q")
    assert (clone.options["group_id"], clone.options["group_index"]) == ("g1", 3)
    assert clone.options["queue"] == "q"


def test_replace_and_set_change_the_parts_asked_for(tasks: Any) -> None:
    sig = tasks.add.s(1, 2).set(queue="q")
    replaced = sig.replace(args=(5, 6))
    assert (replaced.args, replaced.options) == ([5, 6], {"queue": "q"})
    assert sig.replace(options={}).options == {}
    assert sig.set(immutable=True, priority=3) is sig
    assert sig.immutable and sig.options == {"queue": "q", "priority": 3}


def test_freeze_fixes_the_id_once(tasks: Any) -> None:
    sig = tasks.add.s(1, 2)
    first = sig.freeze()
    assert sig.id == first.id
    assert sig.freeze("another-id").id == first.id


def test_link_returns_the_callback_and_on_error_the_signature(tasks: Any) -> None:
    sig = tasks.add.s(1, 2)
    callback = tasks.tsum.s()
    assert sig.link(callback) is callback
    errback = tasks.add.si(0, 0)
    assert sig.on_error(errback) is sig
    assert sig.options["link"] == [callback] and sig.options["link_error"] == [errback]


def test_the_pipe_builds_chains_and_a_group_piped_into_a_task_is_a_chord(tasks: Any) -> None:
    pipeline = tasks.add.s(1, 1) | tasks.add.s(2) | tasks.add.s(3)
    assert isinstance(pipeline, chain) and len(pipeline.tasks) == 3
    longer = pipeline | (tasks.add.s(4) | tasks.add.s(5))
    assert len(longer.tasks) == 5
    fan_in = group(tasks.add.s(1, 1), tasks.add.s(2, 2)) | tasks.tsum.s()
    assert isinstance(fan_in, chord) and fan_in.body.task == "t.tsum"
    then = fan_in | tasks.add.s(10)
    assert isinstance(then, chord) and isinstance(then.body, chain)


def test_a_chain_message_carries_the_rest_of_the_chain_in_reverse(tasks: Any, app: Celery) -> None:
    result = chain(tasks.add.s(1, 1), tasks.add.s(2), tasks.add.s(3)).apply_async()
    (message,) = receive_all(app)
    args, _, embed = message.decode()
    assert args == [1, 1]
    second, third = result.parent, result
    assert message.headers["id"] == second.parent.id
    rest = embed["chain"]
    assert [step["args"] for step in rest] == [[3], [2]]
    assert [step["options"]["task_id"] for step in rest] == [third.id, second.id]


def test_partial_arguments_of_a_chain_go_to_its_first_task(tasks: Any, app: Celery) -> None:
    chain(tasks.add.s(1), tasks.add.s(2)).apply_async((10,))
    (message,) = receive_all(app)
    assert message.decode()[0] == [10, 1]


def test_a_group_publishes_every_member_in_one_transport_call(
    tasks: Any, app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    publish = MemoryTransport.publish

    def counting(self: MemoryTransport, messages: Any) -> None:
        calls.append(len(messages))
        publish(self, messages)

    monkeypatch.setattr(MemoryTransport, "publish", counting)
    result = group(tasks.add.s(i, i) for i in range(50)).apply_async()
    assert calls == [50]
    messages = receive_all(app)
    assert [m.headers["group"] for m in messages] == [result.id] * 50
    assert [m.headers["group_index"] for m in messages] == list(range(50))
    assert [m.headers["id"] for m in messages] == [r.id for r in result.results]


def test_a_group_refuses_links_when_sent(tasks: Any) -> None:
    members = group(tasks.add.s(1, 1), tasks.add.s(2, 2))
    with pytest.raises(TypeError, match="use a chord"):
        members.apply_async(link=tasks.tsum.s())
    with pytest.raises(TypeError, match="link_error"):
        members.apply_async(link_error=tasks.tsum.s())


def test_partial_arguments_of_a_group_go_to_every_member(tasks: Any, app: Celery) -> None:
    group(tasks.add.s(1), tasks.add.s(2)).apply_async((10,))
    assert [m.decode()[0] for m in receive_all(app)] == [[10, 1], [10, 2]]


def test_chord_header_messages_carry_the_body_and_the_chord_size(tasks: Any, app: Celery) -> None:
    result = chord([tasks.add.s(1, 1), tasks.add.s(2, 2)], tasks.tsum.s()).apply_async()
    header = result.parent
    assert isinstance(header, GroupResult)
    messages = receive_all(app)
    assert [m.headers["id"] for m in messages] == [r.id for r in header.results]
    for index, message in enumerate(messages):
        body = message.decode()[2]["chord"]
        assert (body["task"], body["chord_size"]) == ("t.tsum", 2)
        assert body["options"]["task_id"] == result.id
        assert (message.headers["group"], message.headers["group_index"]) == (header.id, index)


def test_chunks_send_a_group_of_starmaps(tasks: Any, app: Celery) -> None:
    result = tasks.add.chunks([(i, i) for i in range(5)], 2).apply_async()
    assert isinstance(result, GroupResult) and len(result) == 3
    messages = receive_all(app)
    assert [m.headers["task"] for m in messages] == ["celery.starmap"] * 3
    assert [m.decode()[1]["it"] for m in messages] == [[[0, 0], [1, 1]], [[2, 2], [3, 3]], [[4, 4]]]
    assert isinstance(chunks(tasks.add.s(), [], 1).group(), group)


def test_map_and_starmap_are_one_message_each(tasks: Any, app: Celery) -> None:
    assert isinstance(tasks.add.map([1]), xmap) and isinstance(tasks.add.starmap([]), xstarmap)
    tasks.add.starmap([(1, 2), (3, 4)]).apply_async()
    (message,) = receive_all(app)
    assert message.headers["task"] == "celery.starmap"
    assert message.decode()[1] == {"task": plain(tasks.add.s()), "it": [[1, 2], [3, 4]]}


def test_signature_of_a_dict_copies_it(tasks: Any, app: Celery) -> None:
    data = plain(tasks.add.s(1))
    sig = signature(data, app=app)
    sig.set(queue="q")
    assert data["options"] == {}


class TestEagerMode:
    @pytest.fixture
    def eager(self, app: Celery, tasks: Any) -> Any:
        app.conf.task_always_eager = True
        return tasks

    def test_a_chain_runs_each_step_with_the_previous_result(self, eager: Any) -> None:
        result = (eager.add.s(1, 1) | eager.add.s(10) | eager.add.s(100)).apply_async(
            task_id="last"
        )
        assert result.get() == 112 and result.id == "last"
        assert result.parent.get() == 12 and result.parent.id != "last"

    def test_a_group_runs_every_member(self, eager: Any) -> None:
        result = group(eager.add.s(i, i) for i in range(4)).apply_async()
        assert isinstance(result, GroupResult)
        assert result.get() == [0, 2, 4, 6]

    def test_a_chord_runs_the_body_with_the_header_results(self, eager: Any) -> None:
        result = chord((eager.add.s(i, 1) for i in range(3)), eager.tsum.s()).apply_async()
        assert result.get() == 6
