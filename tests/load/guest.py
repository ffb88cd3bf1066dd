"""One load guest: N mixed file operations on /data, run under ``synthfs run``.

Usage: ``python3 guest.py DIR N SEED SHARED_DIR MANIFEST PUB_DIR [THREADS]``

Works in its own directory ``DIR`` (created), keeping a model of what every
file in it must hold (name -> sha256): create, overwrite, append, read back
and compare, rename (sometimes over another file), delete, list and compare
with the model; and reads the shared files under ``SHARED_DIR``, whose
sha256 the host file ``MANIFEST`` (JSON) gives. And it talks with the other
guests (on the other agent too) through ``PUB_DIR``: it publishes
self-checking files (the sha256 of the payload in hex, then the payload),
each written under a temporary name and renamed into place (the atomic
idiom: a reader on any agent sees the old or the new file, never a torn one),
as ``NAME-K`` (never changed again) and ``NAME-live`` (replaced each time),
and it reads the others' files and checks them. Every operation is timed.

With THREADS > 1, that many threads each do N operations, thread K in
``DIR/tK`` (a multithreaded guest: the supervisor follows every thread).

Prints one JSON object on stdout: ops done, errors (the first few described),
the slowest operation, and the final models (directory -> model), which the
test compares with the server's directories. Uses only the standard library (any python3 will do).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import threading
import time
from typing import Any


def work(top: str, n: int, seed: int, shared: str, shared_sums: dict[str, str],
         pub: str) -> dict[str, Any]:
    """N operations in ``top``; the report (see the module docstring)."""
    me = top.strip("/").replace("/", "-")
    published: dict[str, str] = {}  # name in pub -> sha256 of the whole file
    rng = random.Random(seed)
    model: dict[str, str] = {}
    errors: list[str] = []
    counts: dict[str, int] = {}
    slowest = (0.0, "")
    serial = 0
    os.makedirs(top, exist_ok=True)

    def content() -> bytes:
        size = rng.choice([0, 1, 100, 4096, 5000, 65536, 200_000])
        return rng.randbytes(size)

    def publish(name: str) -> None:
        payload = rng.randbytes(rng.choice([0, 10, 5000, 70_000]))
        data = hashlib.sha256(payload).hexdigest().encode() + payload
        tmp = f"{pub}/.tmp-{me}-{serial}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, f"{pub}/{name}")
        published[name] = hashlib.sha256(data).hexdigest()

    def check(name: str, data: bytes, want: str) -> None:
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            errors.append(f"{name}: read {len(data)} bytes, sha256 {got[:12]} != {want[:12]}")

    done = 0
    loop_started = time.monotonic()
    while done < n:
        names = sorted(model)
        op = rng.choice(["create", "create", "write", "append", "read", "read", "rename",
                         "delete", "list", "shared", "publish", "peek"])
        if op in ("write", "append", "read", "rename", "delete") and not names:
            op = "create"
        started = time.monotonic()
        try:
            if op == "create":
                serial += 1
                name = f"f{serial}"
                data = content()
                with open(f"{top}/{name}", "xb") as f:
                    f.write(data)
                model[name] = hashlib.sha256(data).hexdigest()
            elif op == "write":
                name = rng.choice(names)
                data = content()
                with open(f"{top}/{name}", "wb") as f:
                    f.write(data)
                model[name] = hashlib.sha256(data).hexdigest()
            elif op == "append":
                name = rng.choice(names)
                with open(f"{top}/{name}", "rb") as f:
                    old = f.read()
                check(name, old, model[name])
                extra = rng.randbytes(rng.choice([1, 10, 3000]))
                with open(f"{top}/{name}", "ab") as f:
                    f.write(extra)
                model[name] = hashlib.sha256(old + extra).hexdigest()
            elif op == "read":
                name = rng.choice(names)
                with open(f"{top}/{name}", "rb") as f:
                    check(name, f.read(), model[name])
            elif op == "rename":
                src = rng.choice(names)
                if rng.random() < 0.3 and len(names) > 1:
                    dst = rng.choice([x for x in names if x != src])  # over an existing file
                else:
                    serial += 1
                    dst = f"f{serial}"
                os.rename(f"{top}/{src}", f"{top}/{dst}")
                model[dst] = model.pop(src)
            elif op == "delete":
                name = rng.choice(names)
                os.unlink(f"{top}/{name}")
                del model[name]
            elif op == "list":
                seen = sorted(os.listdir(top))
                if seen != names:
                    errors.append(f"listing {sorted(set(seen) ^ set(names))[:5]} differ")
            elif op == "publish":
                serial += 1
                publish(f"{me}-live" if rng.random() < 0.5 else f"{me}-{serial}")
            elif op == "peek":  # another guest's published file, maybe through the other agent
                theirs = [x for x in os.listdir(pub) if not x.startswith(".tmp-")]
                if theirs:
                    name = rng.choice(theirs)
                    with open(f"{pub}/{name}", "rb") as f:
                        data = f.read()
                    if data[:64] != hashlib.sha256(data[64:]).hexdigest().encode():
                        errors.append(f"pub/{name}: torn or wrong ({len(data)} bytes)")
            else:
                rel = rng.choice(sorted(shared_sums))
                with open(f"{shared}/{rel}", "rb") as f:
                    check(f"shared/{rel}", f.read(), shared_sums[rel])
        except OSError as exc:
            errors.append(f"{op}: {exc}")
        took = time.monotonic() - started
        if took > slowest[0]:
            slowest = (took, op)
        counts[op] = counts.get(op, 0) + 1
        done += 1
        if done % 10 == 0:  # for a test that acts mid-run (one line per 10 operations)
            print(f"progress {top} {done}", file=sys.stderr, flush=True)
    return {"ops": done, "counts": counts, "errors": errors,
            "seconds": time.monotonic() - loop_started, "slowest": [slowest[0], slowest[1]],
            "models": {top: model}, "published": published}


def main() -> int:
    top, n, seed, shared, manifest, pub = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
        sys.argv[4], sys.argv[5], sys.argv[6]
    threads = int(sys.argv[7]) if len(sys.argv) > 7 else 1
    with open(manifest) as f:
        shared_sums: dict[str, str] = json.load(f)
    if threads == 1:
        reports = [work(top, n, seed, shared, shared_sums, pub)]
    else:
        os.makedirs(top, exist_ok=True)
        reports = [{} for _ in range(threads)]

        def run(k: int) -> None:
            reports[k] = work(f"{top}/t{k}", n, seed * 100 + k, shared, shared_sums, pub)

        pool = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    errors = [e for r in reports for e in r.get("errors", ["a thread died"])]
    report = {"ops": sum(r.get("ops", 0) for r in reports),
              "counts": {k: sum(r["counts"].get(k, 0) for r in reports if r)
                         for k in {k for r in reports if r for k in r["counts"]}},
              "errors": len(errors), "first_errors": errors[:10],
              "seconds": max(r.get("seconds", 0.0) for r in reports),
              "slowest_s": max(r["slowest"][0] for r in reports if r),
              "slowest_op": max((r["slowest"] for r in reports if r), default=[0, ""])[1],
              "models": {d: m for r in reports if r for d, m in r["models"].items()},
              "published": {k: v for r in reports if r for k, v in r["published"].items()}}
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
