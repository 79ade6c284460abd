"""Rule engine: a pure, deterministic core (model, engine, pack, kinds), the packs
and the live Kafka runner (:mod:`rules.runner`, on :mod:`storage` and :mod:`stream`).
"""
