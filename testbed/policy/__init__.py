"""The sans-IO core: every serving decision as a plain object driven by ``now`` and events.

Nothing here imports simpy, asyncio, torch or an HTTP library; the simulator and the live stack
both drive these same classes.
"""
