"""The reference client for the test hub: Python's huggingface_hub, as users run it.

Reads a JSON list of {"repo_id", "repo_type", "revision", "filename"} on stdin, calls
`hf_hub_download` for each (HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE come from the
environment, as for any user), and prints one JSON list: per file the path it returned and the
SHA-256 of its bytes, or the error it raised. Used by tests/it/hub/mod.rs.
"""

import hashlib
import json
import sys

import huggingface_hub
from huggingface_hub import hf_hub_download


def main() -> None:
    asked = json.load(sys.stdin)
    out = []
    for a in asked:
        try:
            path = hf_hub_download(
                repo_id=a["repo_id"],
                filename=a["filename"],
                repo_type=a["repo_type"],
                revision=a["revision"],
            )
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            out.append({**a, "path": path, "sha256": digest})
        except Exception as e:  # reported to the test, which names the file
            out.append({**a, "error": f"{type(e).__name__}: {e}"})
    json.dump({"version": huggingface_hub.__version__, "files": out}, sys.stdout)


if __name__ == "__main__":
    main()
