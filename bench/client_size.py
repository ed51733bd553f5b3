"""The JavaScript client's size against the browser SSE clients people would use instead:
source, minified (esbuild) and minified + gzip -9, each bundled with what it imports.

    python bench/client_size.py        # needs node and npm; installs into a temporary folder
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The versions measured (docs/benchmarks.md); esbuild only minifies and bundles.
PEERS = {"eventsource": "4.1.1", "@microsoft/fetch-event-source": "2.0.1"}
ESBUILD = "esbuild@0.25.12"


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    work = Path(tempfile.mkdtemp(prefix="changefeed-size-"))
    try:
        packages = [ESBUILD, *(f"{name}@{version}" for name, version in PEERS.items())]
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", *packages],
            cwd=work,
            check=True,
        )
        ours = REPO / "clients" / "js" / "client.js"
        entries = {"changefeed /client.js": ours}
        for name in PEERS:
            entry = work / f"{name.replace('/', '_')}.mjs"
            entry.write_text(f"export * from {json.dumps(name)};\n")
            entries[f"{name} {PEERS[name]}"] = entry
        print(f"{'client':<40} {'source':>8} {'minified':>9} {'min+gzip':>9}")
        for label, entry in entries.items():
            built = subprocess.run(
                [
                    str(work / "node_modules" / ".bin" / "esbuild"),
                    str(entry),
                    "--bundle",
                    "--minify",
                    "--format=esm",
                    "--platform=browser",
                ],
                cwd=work,
                check=True,
                capture_output=True,
            ).stdout
            source = ours.stat().st_size if entry == ours else None
            print(
                f"{label:<40} {source if source else '-':>8} {len(built):>9} "
                f"{len(gzip.compress(built, 9)):>9}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
