    $null = Get-Command -Name Get-VM -Module Hyper-V
    $null = Get-VMHost
    # Name of each switch: https://learn.microsoft.com/en-us/powershell/module/hyper-v/get-vmswitch
    Out-FerryResult @{ switches = @(Get-VMSwitch | Select-Object -ExpandProperty Name) }
