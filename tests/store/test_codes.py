"""Generated secrets and ids have shapes that survive shells and command lines."""

import re

from corral.store.repository import new_activation_code, new_node_id


def test_activation_codes_are_letters_and_digits_and_unique() -> None:
    codes = {new_activation_code() for _ in range(2000)}
    assert len(codes) == 2000
    for code in codes:
        # A code starting with "-" was once read by the agent's argument parser as an option.
        assert re.fullmatch(r"[A-Za-z0-9]{32}", code)


def test_node_ids_are_systems_manager_shaped() -> None:
    for _ in range(1000):
        assert re.fullmatch(r"mi-[0-9a-f]{17}", new_node_id())
