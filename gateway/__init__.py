"""wsn-gateway: sensors to durable buffer to signed batches to mutual-TLS MQTT."""

__version__ = "0.1.0"
