"""Every claim of the seed report (``../shared/seed/``), judged from the files this repository commits.

``claims()`` gives each claim, in the seed's order, a **verdict** (reproduced, not reproduced, or not testable here /
not addressed, with a *because*) computed by a rule from ``results/*.json`` and ``checkpoints/*.json`` (or a committed
notebook's printed output where no JSON holds the numbers yet), never typed; the **kind of evidence** (measured here;
measured under our definition, a check of ours for a quantity the seed leaves undefined, with its chance level, floor
or ceiling; cost model only; not measured); the numbers; the files and chapter that show them. Each rule is a function
of ``rules.py``, its threshold a constant there; each family of claims is judged in a module of its own (``latency``,
``quality``, ``architecture``, ``training``, ``inference``, ``serving``), and ``table.py`` puts them in the seed's order
beside the claims no rule judges (``UNADDRESSED``). A latency gain is judged on **the column the seed used** (end to
end: the full turn); a number past the seed's band is labelled, never counted as reproduced. ``--markdown`` prints the
README's table.
"""
