"""Django settings of the benchmark peer.

`REDIS_URL` is the Redis of the channel layer; `BENCH_CHANNEL_LAYER` picks
`core` (RedisChannelLayer, the default layer) or `pubsub`
(RedisPubSubChannelLayer). Both keep their default capacity and expiry.

`socket_timeout: None`: redis-py 8 defaults the socket timeout to 5 s, and the
core layer's idle BZPOPMIN blocks for 5 s, so idle consumers crash and their
sockets close (channels_redis#422). No timeout restores redis-py 7's default.
"""

import os

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
LAYERS = {
    "core": "channels_redis.core.RedisChannelLayer",
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
}

SECRET_KEY = "benchmark-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["channels"]
ROOT_URLCONF = "djpeer.urls"
ASGI_APPLICATION = "djpeer.asgi.application"
USE_TZ = True
DATABASES = {}
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "root": {"level": "WARNING"}}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": LAYERS[os.environ.get("BENCH_CHANNEL_LAYER", "core")],
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None}]},
    }
}
