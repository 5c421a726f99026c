"""Documents through translation: HTML and XML read as a stream of blocks whose inline tags are taken out,
translated as text and put back around the target words aligned to the words they enclosed; URLs, e-mail
addresses, numbers and placeholders carried through unchanged. Above inspect (the word alignments), below the
server and the command line."""
