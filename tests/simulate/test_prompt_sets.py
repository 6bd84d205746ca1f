"""A campaign's prompt set, made on demand, reads as the list it stands for."""

from __future__ import annotations

import pytest

from alambic.simulate.text import TextBank


def test_a_task_set_slices_maps_and_indexes_as_its_list_would():
    tasks = TextBank().task_set(2500, seed=3)  # past the built-in tasks: reworded ones too
    listed = list(tasks)
    assert len(listed) == 2500 == len(set(listed))  # every task distinct
    assert list(tasks[1::7]) == listed[1::7] and list(tasks[1::7][2::3]) == listed[1::7][2::3]
    assert tasks[-1] == listed[-1] and "(part " in listed[-1]
    assert list(tasks.map(lambda i, task: f"{i}: {task}"))[5] == f"5: {listed[5]}"
    with pytest.raises(IndexError):
        tasks[2500]
    assert list(TextBank().task_set(2500, seed=3)) == listed and list(TextBank().task_set(2500, seed=4)) != listed
