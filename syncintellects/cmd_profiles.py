"""``syncintellects profiles``: the bundled step-time profiles (the zoo)."""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("profiles", help="list the bundled step-time profiles (GPU x model x TP x engine)",
                       description="The bundled calibration profiles: name (for --profile), GPU, model, tensor-"
                                   "parallel degree, engine class, KV blocks per GPU and where the numbers come from "
                                   "(docs/profiles.md; rebuilt by python -m simulator.profiles.derive_zoo).")
    p.add_argument("--json", action="store_true", help="one JSON list instead of the table")
    p.set_defaults(func=run)


def run(args) -> int:
    from simulator.profile import profile_rows

    rows = profile_rows()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    cols = ("name", "gpu", "model", "tp", "engine", "kv_blocks", "source")
    table = [[str(r[c]) + (f" (alias {', '.join(r['aliases'])})" if c == "name" and r["aliases"] else "")
              for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)).rstrip())
    return 0
