# The learning run: reads only /data/readme; writes nothing it keeps.
# It makes and removes three files in /data/secrets (reading them back), and
# three directories at the root, each with one file.
import os
for i in range(3):
    p = f"/data/secrets/t{i}"
    open(p, "w").write("x"); open(p).read(); os.unlink(p)
for i in range(3):
    os.mkdir(f"/data/w{i}"); p = f"/data/w{i}/f"; open(p, "w").write("x"); os.unlink(p); os.rmdir(f"/data/w{i}")
print(open("/data/readme").read().strip())
