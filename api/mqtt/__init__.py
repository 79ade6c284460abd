"""The MQTT broker's accounts and files (``smartpark mqtt``): :mod:`api.mqtt.acl`
makes the password and ACL files, :mod:`api.mqtt.cli` is the command."""
