"""nriqa.allocator: freed tensor memory stays in the process (no page faults on reuse)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from nriqa import allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A 40 MB layer output (above the 32 MB up to which glibc moves its mmap threshold), made and
# freed 20 times; prints the minor page faults taken.
PROBE = """
import json, resource, torch
from nriqa.allocator import retain_freed_memory
applied = retain_freed_memory()
x = torch.rand(10 * 2**20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    x * 2
print(json.dumps({"applied": applied,
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""
PAGES = 40 * 2**20 // 4096  # page faults to touch one fresh 40 MB buffer


def _probe(setting: str) -> dict:
    env = {**os.environ, allocator.ENV: setting}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, check=True, capture_output=True,
                         text=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the allocator setting is for glibc (Linux)")
def test_freed_memory_is_reused_without_new_page_faults():
    kept, default = _probe("1"), _probe("0")
    assert kept["applied"] and not default["applied"]
    assert default["faults"] > 15 * PAGES  # glibc maps each output afresh: every page faults again
    assert kept["faults"] < 10 * PAGES  # measured: 5 to 6 (the first output, the threads' arenas)


def test_not_applied_when_turned_off_or_without_glibc(monkeypatch):
    monkeypatch.setenv(allocator.ENV, "0")
    assert allocator.retain_freed_memory() is False
    monkeypatch.delenv(allocator.ENV)
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    assert allocator.retain_freed_memory() is False


def test_the_command_sets_the_allocator_before_running_a_verb(monkeypatch, capsys):
    import nriqa.cli as cli

    calls = []
    monkeypatch.setattr(cli, "retain_freed_memory", lambda: calls.append(1))
    assert cli.main(["recipes"]) == 0
    assert calls == [1] and "demo" in capsys.readouterr().out
