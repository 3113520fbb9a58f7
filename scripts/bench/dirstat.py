#!/usr/bin/env python3
"""Prints "FILES BYTES": the number of regular files under the given paths and their total size.

Used by scripts/bench.py (which imports count) to size the data sets and to check that every
restore is complete. Symlinks are not followed; a path that is itself a file counts as one file;
a missing one as none.
"""

import os
import stat
import sys


def count(paths):
    """(files, bytes) of the regular files under paths."""
    files = 0
    total = 0
    for top in paths:
        try:
            st = os.lstat(top)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            files += 1
            total += st.st_size
            continue
        for dirpath, _dirs, names in os.walk(top):
            for name in names:
                st = os.lstat(os.path.join(dirpath, name))
                if stat.S_ISREG(st.st_mode):
                    files += 1
                    total += st.st_size
    return files, total


def main():
    print(*count(sys.argv[1:] or ["."]))


if __name__ == "__main__":
    main()
