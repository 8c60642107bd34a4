"""Perkville v2 connector: OAuth2 password grant, paging, limits, writes, and a local sandbox."""
