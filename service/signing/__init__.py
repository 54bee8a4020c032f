"""Keys and RFC 9421 / RFC 9530 signatures of the peer protocol."""
