"""Tool functions for the tool-call tests: a working one, one that raises, one that kills its
own process, one that hangs, and one that tries the network."""

import os
import socket
import time


def weather(city: str, unit: str = "celsius") -> dict:
    temps = {"Paris": 11, "Lima": 19}
    t = temps[city]
    return {"city": city, "temperature": t if unit == "celsius" else round(t * 9 / 5 + 32), "unit": unit}


def broken(city: str) -> str:
    raise RuntimeError(f"the weather service for {city} is down")


def crash(city: str) -> str:
    os._exit(3)


def hang(city: str) -> str:
    time.sleep(3600)
    return "never"


def fetch(city: str) -> str:
    socket.create_connection(("127.0.0.1", 9), timeout=2)
    return "connected"


def keys(city: str) -> list:
    return sorted(k for k in os.environ if k.endswith(("_API_KEY", "_TOKEN", "_SECRET")))


def slow(city: str) -> dict:
    time.sleep(0.5)
    return {"city": city, "checked": True}
