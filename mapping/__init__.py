"""Pure translation between Perkville records and Perkamo calls (stdlib + pydantic only)."""
