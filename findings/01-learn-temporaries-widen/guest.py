"""The learning run: reads only /data/readme; keeps nothing it writes.

It makes and removes three files in /data/secrets (reading them back), and
three directories at the root, each with one file.
"""

import os
from pathlib import Path

for i in range(3):
    p = Path(f"/data/secrets/t{i}")
    p.write_text("x")
    p.read_text()
    p.unlink()
for i in range(3):
    d = Path(f"/data/w{i}")
    d.mkdir()
    (d / "f").write_text("x")
    (d / "f").unlink()
    os.rmdir(d)
print(Path("/data/readme").read_text().strip())
