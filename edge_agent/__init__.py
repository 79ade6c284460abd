"""Edge agent: reads plant devices, stores readings in a durable outbox, publishes over MQTT."""
