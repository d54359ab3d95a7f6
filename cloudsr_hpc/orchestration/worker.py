"""``python -m cloudsr_hpc.orchestration.worker CAMPAIGN_DIR``: one campaign worker (what each
task of ``slurm/campaign.sh`` runs).  Exit 0 when no claimable scene is left (failures are in the
ledger, see ``submit status``), 2 on a bad campaign directory."""
from __future__ import annotations

import json
import sys

from ..errors import CloudSRError, one_line


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    from .executors import CampaignWorker
    try:
        print(json.dumps(CampaignWorker()(argv[0])), flush=True)
    except CloudSRError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
