"""One load guest: N mixed file operations on /data, run under ``synthfs run``.

Usage: ``python3 guest.py DIR N SEED SHARED_DIR MANIFEST``

Works in its own directory ``DIR`` (created), keeping a model of what every
file in it must hold (name -> sha256): create, overwrite, append, read back
and compare, rename (sometimes over another file), delete, list and compare
with the model; and reads the shared files under ``SHARED_DIR``, whose
sha256 the host file ``MANIFEST`` (JSON) gives. Every operation is timed.

Prints one JSON object on stdout: ops done, errors (the first few described),
the slowest operation, and the final model, which the test compares with the
server's directory. Uses only the standard library (any python3 will do).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time


def main() -> int:
    top, n, seed, shared, manifest = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
        sys.argv[4], sys.argv[5]
    with open(manifest) as f:
        shared_sums: dict[str, str] = json.load(f)
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

    def check(name: str, data: bytes, want: str) -> None:
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            errors.append(f"{name}: read {len(data)} bytes, sha256 {got[:12]} != {want[:12]}")

    done = 0
    loop_started = time.monotonic()
    while done < n:
        names = sorted(model)
        op = rng.choice(["create", "create", "write", "append", "read", "read", "rename",
                         "delete", "list", "shared"])
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
    report = {"ops": done, "counts": counts, "errors": len(errors),
              "first_errors": errors[:10], "seconds": time.monotonic() - loop_started,
              "slowest_s": slowest[0], "slowest_op": slowest[1], "model": model}
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
