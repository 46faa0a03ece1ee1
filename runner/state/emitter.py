"""The lockfile's YAML text, fast: what ``yaml.dump`` makes of an entry, from a template.

Kept (issue 16 measured it, 10,000 entries, CSafeDumper): ``yaml.dump`` of the whole
document takes 3-10 s, this 0.7-1.2 s, byte for byte the same text. A no-op plan never
writes the lockfile, but an apply rewrites it every ``flush_interval`` (5 s) while jobs
change, on the event loop: with ``yaml.dump`` a 10,000-job apply would spend most of each
interval blocked, and its requests would stall with it (the journal makes each change
durable, so it does not need the rewrite, but the reviewed file still must be current).

Each string scalar is rendered once by yaml.dump itself (``_Scalars``) and remembered for
the process; an entry holding anything the template does not know (a bool, a float, a
long or multi-line string, a non-string key) returns None and is dumped by yaml.dump.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import yaml

from runner.models import ENTRY_KEYS, LockEntry

DUMPER: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_LINE_BREAKS = ("\n", "\r", "\x85", "\u2028", "\u2029")
_SIMPLE_MAX = 500  # far below width=1000: such a scalar is never folded, at any indent here


class _Scalars:
    """String -> its text as a YAML block value, as yaml.dump writes it (None: not simple).

    Unseen strings are rendered together, as one yaml.dump of a list (one ``- text`` line
    each: no line breaks, at most ``_SIMPLE_MAX`` characters); a block sequence item and
    a block mapping value get the same style and quoting. Remembered for the process, so
    an apply's later rewrites render only its new trigger words and timestamps.
    """

    def __init__(self) -> None:
        self.known: dict[str, str | None] = {}

    def learn(self, values: Iterable[str]) -> None:
        todo = [v for v in dict.fromkeys(values) if v not in self.known]
        if not todo:
            return
        if len(self.known) > 500_000:
            self.known.clear()
        simple = [v for v in todo if len(v) <= _SIMPLE_MAX and not any(b in v for b in _LINE_BREAKS)]
        if simple:
            text = yaml.dump(simple, Dumper=DUMPER, default_flow_style=False, allow_unicode=True, width=1000)
            lines = text.split("\n")
            if len(lines) == len(simple) + 1 and all(line.startswith("- ") for line in lines[:-1]):
                self.known.update(zip(simple, (line[2:] for line in lines), strict=False))
        for v in todo:
            self.known.setdefault(v, None)

    def get(self, value: str) -> str | None:
        if value not in self.known:
            self.learn([value])
        return self.known[value]


_SCALARS = _Scalars()


def _entry_strings(entries: dict[str, LockEntry]) -> Iterator[str]:
    for name, e in entries.items():
        yield name
        for value in (e.fingerprint, e.status, e.asset_id, e.trigger_word, e.option,
                      e.finetune_type, e.submitted_at, e.finished_at, e.idempotency_key, e.api,
                      e.api_key_env, e.answer, *e.results):
            if type(value) is str:
                yield value
        for mapping in (e.error, e.inputs):
            if type(mapping) is dict:
                for pair in mapping.items():
                    yield from (x for x in pair if type(x) is str)


def _scalar(value: object) -> str | None:
    if value is None:
        return "null"
    if type(value) is int:
        return str(value)
    if type(value) is str:
        return _SCALARS.get(value)
    return None  # bool, float, anything else: yaml.dump decides


def _key(value: object) -> str | None:
    # A key over 128 characters is not a "simple key" for the emitter; stay well below.
    return _SCALARS.get(value) if type(value) is str and len(value) <= 100 else None


def entry_text(name: str, entry: LockEntry) -> str | None:
    """One entry's lines under ``jobs:``, or None when yaml.dump must decide."""
    key = _key(name)
    if key is None:
        return None
    out = [f"  {key}:\n"]
    for field_name in ENTRY_KEYS:
        value = getattr(entry, field_name)
        if field_name == "results":
            if not value:
                out.append("    results: []\n")
                continue
            out.append("    results:\n")
            for item in value:
                text = _scalar(item) if type(item) is str else None
                if text is None:
                    return None
                out.append(f"    - {text}\n")
        elif type(value) is dict:
            if not value:
                out.append(f"    {field_name}: {{}}\n")
                continue
            out.append(f"    {field_name}:\n")
            for k, v in value.items():
                k_text, v_text = _key(k), _scalar(v)
                if k_text is None or v_text is None:
                    return None
                out.append(f"      {k_text}: {v_text}\n")
        else:
            text = _scalar(value)
            if text is None:
                return None
            out.append(f"    {field_name}: {text}\n")
    return "".join(out)


def learn(entries: dict[str, LockEntry]) -> None:
    """Render every string of ``entries`` not seen before, in one yaml.dump."""
    _SCALARS.learn(_entry_strings(entries))
