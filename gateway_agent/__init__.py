"""CareWatch home gateway: reads Bluetooth LE health devices and publishes their readings.

The package root imports nothing, so that the pure parts (``gateway_agent.gatt``,
``gateway_agent.observations``, ``gateway_agent.decode_cli``) work without bleak or paho
installed; only the modules that talk to radios or brokers import those.
"""
