"""The study file's protocol: what an annotator is shown and how votes are judged, fixed before the
first vote (committed in the database, like the prompt file) so exclusion rules are stated up front.

    instructions: FILE or text     shown on a consent screen before the first pair
    roster: FILE                   one annotator id a line; each gets a link with a token
    attention_checks: 4            gold pairs: a clip of ours against its degraded copy (answer known)
    repeats: 3                     pairs shown a second time, sides swapped (per-annotator consistency)
    pairing: ours | all            ours against each baseline (Table 2), or every pair of systems
    lock_s: 1.5                    input locked this long after a pair appears (and until both clips play)
    fast_vote_s: 3.0               a vote sooner than this, or before both clips played once, is "fast"
    exclude: {min_gold_accuracy: 0.75, min_consistency: 0.5, max_fast_share: 0.5, min_done: 1.0}

Tokens are HMACs of the annotator id under the study's secret (made at creation, kept in the db):
links can be re-printed for a grown roster, and a token names no annotator.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

from oneforcing.errors import UserError
from oneforcing.study.design import read_unique_lines

MAX_ID = 64
EXCLUDE_DEFAULTS = {"min_gold_accuracy": 0.75, "min_consistency": 0.5, "max_fast_share": 0.5, "min_done": 1.0}
DEFAULT_INSTRUCTIONS = (
    "You will see pairs of short videos made from a text prompt, side by side, playing on a loop. "
    "Watch both clips, then choose the better one overall (visual quality, motion realism, temporal "
    "consistency, prompt alignment), or Tie if you cannot tell. A few pairs check attention and a few "
    "are shown twice. Your votes are stored with your annotator id and the time each took; nothing else "
    "about you is recorded. You may stop at any time.")


@dataclass(frozen=True)
class Protocol:
    instructions: str = DEFAULT_INSTRUCTIONS
    attention_checks: int = 0
    repeats: int = 0
    pairing: str = "ours"
    lock_s: float = 1.5
    fast_vote_s: float = 3.0
    exclude: dict = field(default_factory=lambda: dict(EXCLUDE_DEFAULTS))

    def committed(self) -> dict:
        """What the database commits (everything: the rules are fixed before the first vote)."""
        return asdict(self)


def _number(value, key: str, lo: float, hi: float, integer: bool = False):
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not lo <= value <= hi:
        what = "an integer" if integer else "a number"
        raise UserError(f"must be {what} in [{lo:g}, {hi:g}], got {value!r}", key=key)
    return value if integer else float(value)


def read_instructions(value) -> str:
    """The `instructions` key: a file (read as UTF-8) or the text itself; None keeps the default."""
    if value is None:
        return DEFAULT_INSTRUCTIONS
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"expected a file or the text, got {value!r}", key="instructions")
    path = Path(value).expanduser()
    looks_like_file = "\n" not in value and value.endswith((".md", ".txt"))
    if looks_like_file and not path.is_file():
        raise UserError(f"no such file: {value}", key="instructions")
    if looks_like_file:
        try:
            return path.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            raise UserError("not UTF-8 text", file=value, key="instructions") from None
    return value.strip()


def build_protocol(instructions=None, attention_checks=0, repeats=0, pairing="ours", lock_s=1.5,
                   fast_vote_s=3.0, exclude=None) -> Protocol:
    if pairing not in ("ours", "all"):
        raise UserError(f"must be 'ours' (ours against each baseline) or 'all', got {pairing!r}", key="pairing")
    if exclude is None:
        exclude = {}
    if not isinstance(exclude, dict):
        raise UserError(f"expected a mapping of rules ({', '.join(EXCLUDE_DEFAULTS)}), got {exclude!r}",
                        key="exclude")
    rules = dict(EXCLUDE_DEFAULTS)
    for name, value in exclude.items():
        if name not in EXCLUDE_DEFAULTS:
            raise UserError(f"unknown rule {name!r} (one of {', '.join(EXCLUDE_DEFAULTS)})", key=f"exclude.{name}")
        rules[name] = _number(value, f"exclude.{name}", 0, 1)
    return Protocol(read_instructions(instructions), _number(attention_checks, "attention_checks", 0, 1000, True),
                    _number(repeats, "repeats", 0, 1000, True), pairing, _number(lock_s, "lock_s", 0, 60),
                    _number(fast_vote_s, "fast_vote_s", 0, 600), rules)


# --- annotators ----------------------------------------------------------------------------------
def annotator_key(raw: str) -> str:
    """An annotator id as stored: NFC, trimmed, case-folded ("Alice" is "alice"), printable."""
    text = unicodedata.normalize("NFC", raw).strip()
    if not text or len(text) > MAX_ID or any(unicodedata.category(c).startswith(("C", "Z")) and c != " "
                                             for c in text):
        raise ValueError(f"an annotator id is 1 to {MAX_ID} printable characters")
    return text.casefold()


def read_roster(path) -> list[str]:
    """Annotator ids, one a line (blank lines and `#` comments skipped), unique ignoring case."""
    return read_unique_lines(path, "roster", "roster", annotator_key, comments=True, same=" (ids ignore case)")[0]


def _mac(secret: str, label: str) -> str:
    return hmac.new(secret.encode(), label.encode(), hashlib.sha256).hexdigest()


def annotator_token(secret: str, annotator: str) -> str:
    return _mac(secret, f"annotator:{annotator}")[:20]


def owner_token(secret: str) -> str:
    return _mac(secret, "owner")[:24]


def completion_code(secret: str, annotator: str) -> str:
    return _mac(secret, f"done:{annotator}")[:8].upper()
