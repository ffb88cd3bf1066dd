"""Write, link, unlink the first name, write on, fsync: natively d holds one,two."""

import os
import sys
from pathlib import Path

os.chdir(sys.argv[1])
fd = os.open("c", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, b"one,")
os.link("c", "d")  # a second name for the same file
os.unlink("c")  # the first name goes; fd still writes the file, now named d
os.write(fd, b"two")
os.fsync(fd)  # acknowledged
os.close(fd)
print("d as the guest reads it:", Path("d").read_bytes())
