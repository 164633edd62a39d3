"""Summarizes a py-spy `--format raw` profile of JupyterHub (collapsed stacks, one
`frame;frame;... count` per line) into where the time goes.

usage: profile_summary.py RAW_FILE SECONDS RATE
Prints the CPU use of the process (samples against SECONDS x RATE), the inclusive share of a few
parts (a sample counts for a part when a frame of its stack matches) and the top leaf functions.
"""

import collections
import re
import sys

path, seconds, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
stacks = []
for line in open(path):
    line = line.rstrip("\n")
    if not line:
        continue
    stack, _, count = line.rpartition(" ")
    stacks.append((stack.split(";"), int(count)))
# pycares (tornado's DNS resolver) keeps a thread in a sleep loop that py-spy counts as active:
# not JupyterHub's work, left out.
stacks = [(f, c) for f, c in stacks if not any("pycares" in x for x in f)]
total = sum(c for _, c in stacks) or 1

parts = [
    ("token hashing (jupyterhub.utils.hash_token)", r"hash_token|compare_token"),
    ("SQLAlchemy, all (ORM + Core + SQLite)", r"sqlalchemy/"),
    ("  of which SQLite (cursor execute/fetch, commit)", r"\b(do_execute|do_commit|do_executemany)\b|fetchall|fetchone"),
    # needs_scope's wrapper (_auth_func) is on every handler's stack: not counted as scope work.
    ("scope checks (jupyterhub/scopes.py, but needs_scope's wrapper)",
     r"^(?!.*_auth_func).*jupyterhub/scopes\.py"),
    ("user model (apihandlers/base.py user_model)", r"\buser_model\b"),
    ("JSON (json/)", r"/json/"),
    ("logging (logging/, jupyterhub/log.py)", r"/logging/|jupyterhub/log\.py"),
    ("token lookup (get_current_user_token, incl. hashing and its query)", r"get_current_user_token"),
]
print(f"JupyterHub's main thread on CPU {100 * total / (seconds * rate):.0f} % of the profile's "
      f"{seconds:.0f} s ({total} samples); shares of those samples:")
for name, pattern in parts:
    rx = re.compile(pattern)
    n = sum(c for frames, c in stacks if any(rx.search(f) for f in frames))
    print(f"  {100 * n / total:5.1f} %  {name}")
# Self time in the event loop and HTTP layers (tornado, asyncio, the socket calls).
rx = re.compile(r"/tornado/|/asyncio/|selectors\.py")
n = sum(c for frames, c in stacks if rx.search(frames[-1]))
print(f"  {100 * n / total:5.1f} %  self time in tornado and asyncio (HTTP parsing, event loop)")
leaf = collections.Counter()
for frames, c in stacks:
    leaf[frames[-1]] += c
print("  top leaf functions (self time):")
for f, c in leaf.most_common(12):
    print(f"  {100 * c / total:5.1f} %  {f}")
