"""Remote Perkamo v1 client that behaves like the official SDKs."""
