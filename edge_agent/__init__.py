"""Edge agent: reads plant devices, keeps readings in a durable outbox, publishes MQTT.

Modules: :mod:`.config` (the YAML file), :mod:`.modbus` (register codec and poller),
:mod:`.outbox` (SQLite outbox), :mod:`.publisher` (MQTT), :mod:`.agent` (the
running agent), :mod:`.cli` (``smartpark edge run | check``).
"""
