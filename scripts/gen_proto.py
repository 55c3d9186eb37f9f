"""Generate the gRPC Python code in fabric/v1/ from proto/fabric/v1/*.proto.

`python scripts/gen_proto.py` writes the files; `--check` regenerates into a temporary
directory and fails when the committed files are stale (the unit suite runs it too).
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_FILES = sorted((PROTO_ROOT / "fabric" / "v1").glob("*.proto"))
GENERATED_DIR = ROOT / "fabric" / "v1"
INIT = '"""Generated from proto/fabric/v1 by scripts/gen_proto.py; do not edit."""\n'


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in PROTO_FILES],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    package = out_dir / "fabric" / "v1"
    (package / "__init__.py").write_text(INIT)
    return sorted(package.iterdir())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if fabric/v1 is stale")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate(Path(tmp))
        names = {p.name for p in generated if p.is_file()}
        if check:
            committed = {p.name for p in GENERATED_DIR.glob("*") if p.is_file()}
            stale = sorted(
                n
                for n in names | committed
                if n not in names
                or n not in committed
                or not filecmp.cmp(
                    Path(tmp) / "fabric" / "v1" / n, GENERATED_DIR / n, shallow=False
                )
            )
            if stale:
                print(f"fabric/v1 is stale ({', '.join(stale)}); run: make proto", file=sys.stderr)
                return 1
            return 0
        GENERATED_DIR.mkdir(exist_ok=True)
        for path in generated:
            if path.is_file():
                (GENERATED_DIR / path.name).write_bytes(path.read_bytes())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
