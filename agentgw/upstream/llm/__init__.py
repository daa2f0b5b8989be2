"""LLM providers behind one small protocol; each provider type is a module (contract 9)."""
