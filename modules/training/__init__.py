"""What training a small decoder on (prompt, answer) text needs, whatever the study: encoding into
right-padded tensors, answer-only losses, deterministic batch streams, and exact match by greedy
decoding or its one-pass teacher-forced equivalent."""
