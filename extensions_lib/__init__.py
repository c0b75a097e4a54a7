# bitsandbytes stays unloaded (and silent) until an 8-bit optimizer is chosen: see lazy_bitsandbytes.py
from .lazy_bitsandbytes import install as _keep_bitsandbytes_lazy

_keep_bitsandbytes_lazy()
