"""Fetch transformers' common model and config tests (`tests/test_modeling_common.py`,
`tests/test_configuration_common.py`) from the source distribution of the INSTALLED transformers release on the
package index, for `tests/test_transformers_common.py`. They are not copied into this repository.

    python tests/scripts/fetch_transformers_tests.py DESTINATION

writes `DESTINATION/<version>/test_modeling_common.py` and `test_configuration_common.py` (nothing to do when they are
there). Without the package index (offline), it says so and exits 0: the tests that need the files skip, naming
them. `make test` runs it (into `.venv/transformers-tests`)."""

import os
import subprocess
import sys
import tarfile
import tempfile

FILES = ("test_modeling_common.py", "test_configuration_common.py")


def main(destination: str) -> int:
    from importlib.metadata import version

    release = version("transformers")
    target = os.path.join(destination, release)
    if all(os.path.isfile(os.path.join(target, name)) for name in FILES):
        return 0
    with tempfile.TemporaryDirectory() as folder:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             f"transformers=={release}", "--dest", folder],
            capture_output=True, text=True,
        )
        archives = [name for name in os.listdir(folder) if name.endswith((".tar.gz", ".zip"))]
        if result.returncode != 0 or not archives:
            print(f"fetch_transformers_tests: could not download the transformers {release} source distribution "
                  f"(offline?); the transformers common tests will skip. {result.stderr.strip()[-300:]}")
            return 0
        os.makedirs(target, exist_ok=True)
        with tarfile.open(os.path.join(folder, archives[0])) as archive:
            for member in archive.getmembers():
                parts = member.name.split("/")
                if len(parts) == 3 and parts[1] == "tests" and parts[2] in FILES and member.isfile():
                    data = archive.extractfile(member).read()
                    with open(os.path.join(target, parts[2]), "wb") as handle:
                        handle.write(data)
    missing = [name for name in FILES if not os.path.isfile(os.path.join(target, name))]
    if missing:
        print(f"fetch_transformers_tests: the transformers {release} source distribution has no tests/{missing}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
