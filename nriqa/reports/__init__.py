"""Reports and pictures of results: the demo report, the HTML score gallery."""
