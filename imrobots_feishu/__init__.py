"""Feishu/Lark platform plugin for imrobots: the long connection in, CardKit streaming or
PATCHed cards out, and a Feishu emulator (see ``docs/platforms/feishu.md``)."""
