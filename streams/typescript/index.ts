// Generated from handwriting_ai.contracts by `digits schemas`: never edit by hand.
// Regenerate with: ./dev run digits schemas   (zod 4; checked with typescript 5.9.3, zod 4.6.7)
export * from "./types.js";
export * from "./schemas.js";
