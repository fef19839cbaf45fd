    # @(): a function's output is unrolled, and $null piped to
    # ForEach-Object would run it once.
    $vms = @(Find-FerryVM $p.name)
    Out-FerryResult @{ vms = @($vms | ForEach-Object { Get-FerryVMInfo $_ }) }
