"""What every dataset's readers share: finding files (:mod:`.paths`), reading rows of CSV, text,
spreadsheet and MATLAB label files (:mod:`.rows`), turning entries into a checked label table
(:mod:`.tables`, with its :mod:`.problems`), naming rules (:mod:`.naming`) and pyiqa's meta-info
layouts (:mod:`.pyiqa`). The datasets themselves are in :mod:`nriqa.data.datasets`."""
